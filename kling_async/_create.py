"""A create's life: its tries, its waits for a parallel-task slot, and what settles it.

Every create is a paid job (``docs/concepts.md``, "Creates: retries, stamping and
reconciliation"): a create is repeated only where the server certainly made no task; an
unknown outcome is never resent but looked up (``_lookup``) until it is found or the window
in which it could make a task has closed, or reported as `AmbiguousCreateError` with
everything needed to resolve it by hand. What a failure means is the retry decision's
(``_policies.next_step``); this module sends, sleeps and records.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from typing import TYPE_CHECKING

import attrs

from . import _reconcile, sansio
from ._account import DeadlinePassed, Slot, SlotGate
from ._attempt import STAMP_PREFIX, Attempts, CallbackSlot, CreateAttempt, CreateRecord
from ._journal_requests import images_left_out
from ._lookup import Absent, Lookup
from ._policies import Action, next_step
from ._source_requests import CreateRequest, source_video_id
from .errors import (
    AmbiguousCreateError,
    ContentPolicyError,
    InvalidRequestError,
    KlingError,
    NotFoundError,
    RetryAfterTooLongError,
    SessionClosedError,
    SubmitTimeoutError,
)
from .models import Task, TaskFamily

if TYPE_CHECKING:
    from ._wire import Wire

__all__ = ["REFUSALS", "Creator"]

logger = logging.getLogger("kling_async")


class Creator:
    """Sends creates for one session and settles those whose outcome is unknown."""

    def __init__(self, wire: Wire, gate: SlotGate) -> None:
        self._wire = wire
        self.gate = gate
        self.attempts = Attempts()
        self.lookup = Lookup(wire, self.attempts)

    async def create(
        self,
        request: CreateRequest,
        *,
        deadline: float | None = None,
        record: CreateRecord | None = None,
        callback: CallbackSlot | None = None,
        key: str | None = None,
        resend: bool = False,
    ) -> Task:
        """A create with the create retry rules (``docs/errors.md``, "What is retried").

        ``deadline`` (on the loop's clock) stops waiting before a send, never a create on
        the wire: past it, a create that has not been sent raises `SubmitTimeoutError`.
        Whatever interrupts a create while its outcome is unknown (a native asyncio cancel
        during the send, a cancel during the look-up) is logged with what finds the task
        again; closing the session under it raises AmbiguousCreateError. ``record`` (a
        journal's, for one key) hears of each step so that a crash loses nothing.
        ``callback`` is the receiver's URL for this create, added to what is sent only;
        ``key`` (the journal's) is named in errors and logs. ``resend``: a journaled send
        is sent again (its external id is this create's, whoever stamped it).
        """
        if images_left_out(request):
            # Read back from a journal that keeps only its images' digests: never sent on a
            # guess (docs/concepts.md, "Keys for source videos").
            raise RuntimeError(
                f"the {request.subject} create of key {key!r} made no task and is not sent from "
                "the journal, which keeps only digests of its base64 images: call "
                "image_to_video with the same images and key to send it"
            )
        if callback is not None and request.callback_url is None:
            request = attrs.evolve(request, callback_url=callback.url)
            callback.sent = True
        attempt = CreateAttempt(
            source_video_id(request), record, request.external_task_id, key, request.family
        )
        self.attempts.start(attempt)
        try:
            task = await self._tries(request, attempt, deadline, resend)
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
        except AmbiguousCreateError:
            self.attempts.left_in_doubt(attempt)  # may still own a listed task: a rival
            raise
        except BaseException:
            # A cancel, or a transport of the caller's that raised its own exception: what
            # was on the wire may have made a task, so it stays a rival, and the log says so.
            if attempt.doubtful:
                attempt.in_doubt = True
                self.attempts.left_in_doubt(attempt)
                logger.warning(
                    "a create for %s sent at %s was interrupted while its outcome was "
                    "unknown; it may have made a task%s",
                    request.subject,
                    attempt.sent_at.isoformat(),
                    f" (external_task_id {request.external_task_id})"
                    if request.external_task_id
                    else "",
                )
            raise
        else:
            attempt.resolved = True
            return task
        finally:
            self.attempts.end(attempt)
            attempt.take_off_wire()

    async def _tries(
        self, request: CreateRequest, attempt: CreateAttempt, deadline: float | None, resend: bool
    ) -> Task:
        """The tries of one create with its one parallel-task slot: taken before the first
        send, kept across retries, bound to the task the reply (or a look-up) names, handed
        back after a 1303 and taken again; at the end, given back if no task was made, or
        kept as in doubt when one may have been."""
        held = _Held(request.family)
        try:
            return await self._try_all(request, attempt, deadline, held, resend)
        finally:
            slot = held.slot
            if slot is not None:
                if attempt.doubtful:
                    self.gate.doubt(slot)
                else:
                    self.gate.release(slot)

    async def _try_all(
        self,
        request: CreateRequest,
        attempt: CreateAttempt,
        deadline: float | None,
        held: _Held,
        resend: bool,
    ) -> Task:
        wire = self._wire
        clock = wire.clock
        http_request = sansio.create_request(wire.base_url, request)
        # A refusal names the source video, and why it cannot be extended (docs/errors.md,
        # "Refused source videos").
        parse = functools.partial(sansio.parse_created, video_id=source_video_id(request) or None)
        started = clock()
        first_refusal: float | None = None  # when the first 1303 came
        slot_time = 0.0  # tries refused with 1303 and their waits: not the retry budget's
        retry = 0
        slot_waits = 0
        resigned = False
        last_error: KlingError | None = None

        async def leaving(now: float) -> None:
            await attempt.leaving(now, wire.server_clock, wire.create_deadline)

        while True:
            if deadline is not None and clock() >= deadline:
                raise self._timed_out(request, deadline, started, last_error) from last_error
            if held.slot is None:
                try:
                    held.slot = await self.gate.acquire(deadline)
                except DeadlinePassed:
                    raise self._timed_out(request, deadline, started, last_error) from last_error
            authorization = wire.auth.authorization(wire.server_time())
            attempt.begin()
            tried_at = clock()
            try:
                task = await wire.send(
                    http_request,
                    authorization,
                    parse,
                    retry + 1,
                    before_send=leaving,
                    shielded=True,
                    deadline=deadline,
                )
            except DeadlinePassed:
                raise self._timed_out(request, deadline, started, last_error) from last_error
            except KlingError as error:
                if isinstance(error, SessionClosedError):
                    if not attempt.doubtful:
                        await self._not_sent(attempt)
                    raise  # create() decides, knowing whether it was on the wire
                taken = await self._taken(request, attempt, error, resend)
                if taken is not None:  # an earlier send of this create made it
                    attempt.take_off_wire()
                    self.attempts.remember(taken.task_id, attempt.key)
                    await self._created(attempt, held, taken)
                    return taken
                now = clock()
                try:
                    step = next_step(
                        wire.retry_policy,
                        error,
                        create=True,
                        retry=retry + 1,
                        elapsed=now - started - slot_time,
                        rng=wire.rng,
                    )
                except RetryAfterTooLongError:  # a refusal that asks too long a wait
                    attempt.take_off_wire()
                    await self._not_sent(attempt)
                    raise
                attempt.in_doubt = step.action is Action.RECONCILE
                attempt.take_off_wire()
                if step.action is Action.RAISE and isinstance(error, REFUSALS):
                    if attempt.record is not None:
                        await attempt.record.refused(error)
                elif step.action is not Action.RECONCILE:
                    await self._not_sent(attempt)
                if step.resign and not resigned and wire.auth.expire(authorization):
                    resigned = True
                    continue
                if step.action is Action.WAIT_SLOT:
                    self.gate.refused(held.take())
                    first_refusal = tried_at if first_refusal is None else first_refusal
                    await self._wait_for_slot(error, now - first_refusal, slot_waits + 1, deadline)
                    slot_waits += 1
                    slot_time += clock() - tried_at
                    last_error = error
                    continue
                if step.action is Action.RECONCILE:
                    # Never resent: a "not found" cannot prove that the first create will not
                    # still make its task.
                    found = await self.lookup.settle(request, str(error), attempt, cause=error)
                    await self._created(attempt, held, found)
                    return found
                if step.delay is None:
                    raise
                retry += 1
                delay = step.delay
                last_error = error
            else:
                # Claimed at once, before any await: a concurrent look-up must not take it.
                self.attempts.remember(task.task_id, attempt.key)
                attempt.take_off_wire()
                if task.created_at is not None:  # the server's clock, read during the send
                    wire.server_clock.observe(
                        task.created_at, attempt.sent_at, dt.datetime.now(dt.timezone.utc)
                    )
                await self._created(attempt, held, task)
                if (
                    request.external_task_id is not None
                    and task.external_task_id == request.external_task_id
                ):
                    self.lookup.keeps_external_ids = True
                return task
            wire.retries += 1
            logger.info(
                "retrying create for %s in %.2f s (retry %d): %s",
                request.subject,
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
        request: CreateRequest,
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
        now = dt.datetime.now(dt.timezone.utc)
        remaining, placed = _reconcile.time_left(
            wire.create_deadline,
            now=now,
            sent_at=sent_at,
            server_now=wire.server_clock.to_server(now),
            sent_server=sent_server,
        )
        attempt = CreateAttempt(
            source_video_id(request), record, request.external_task_id, key, request.family
        )
        attempt.sent_at = sent_at
        attempt.sent_server = sent_server
        attempt.sent_uncertainty = sent_uncertainty or 0.0
        attempt.placed = placed
        attempt.in_doubt = True
        attempt.window_ends = wire.clock() + remaining
        self.attempts.start(attempt)
        try:
            task = await self.lookup.settle(
                request,
                "it was sent by a process that stopped before the reply",
                attempt,
                may_resend=True,
            )
        except Absent:
            attempt.in_doubt = False  # certainly made nothing
        except BaseException:
            self.attempts.left_in_doubt(attempt)  # still in doubt: a rival for others
            raise
        else:
            attempt.resolved = True
            await record.created(task)
            return task
        finally:
            self.attempts.end(attempt)
        logger.info(
            "the journaled create for %s%s made no task; sending it",
            request.subject,
            "" if key is None else f" (key {key!r})",
        )
        attempt.recorded = True  # the journal says "sending"
        await self._not_sent(attempt)
        return await self.create(request, record=record, callback=callback, key=key, resend=True)

    async def _taken(
        self, request: CreateRequest, attempt: CreateAttempt, error: KlingError, resend: bool
    ) -> Task | None:
        """After a refusal with 1201: the task that already carries this create's own
        external id (one the session stamped, or a journaled send's being sent again), or
        None (the refusal stands). Kling refuses an external id that is taken, and only an
        earlier send of this very create can have taken one of these.
        AmbiguousCreateError when the look-up fails: then nobody can tell."""
        external_id = request.external_task_id
        if not (
            isinstance(error, InvalidRequestError)
            and error.code == 1201
            and external_id is not None
            and (resend or external_id.startswith(STAMP_PREFIX))
        ):
            return None
        try:
            found = await self.lookup.carrying(external_id, request.family)
        except KlingError as failure:
            attempt.in_doubt = True
            raise AmbiguousCreateError(
                f"the create was refused ({error}), perhaps because an earlier send of it made "
                f"a task with its external id, and looking that id up failed ({failure})",
                request=request,
                sent_at=attempt.sent_at,
                external_task_id=external_id,
                key=attempt.key,
            ) from error
        if found is not None:
            logger.warning(
                "a create for %s was refused with 1201 and its external id %s names "
                "task %s: an earlier send of it made that task",
                request.subject,
                external_id,
                found.task_id,
            )
        return found

    async def _created(self, attempt: CreateAttempt, held: _Held, task: Task) -> None:
        """The create made ``task``: the journal first (a slow gate must not leave the key
        *sending*), then the slot, which is bound whatever the journal said."""
        try:
            if attempt.record is not None:
                await attempt.record.created(task)
        finally:
            await self._bind(held, task)

    async def _bind(self, held: _Held, task: Task) -> None:
        """The create's task is known: its slot is kept until the task is seen finished (or
        given back at once when it already is: nobody will see it finish)."""
        slot = held.take()
        if task.done:
            self.gate.release(slot)
        else:
            await self.gate.bind(slot, task.task_id, held.family)

    async def _not_sent(self, attempt: CreateAttempt) -> None:
        if attempt.record is not None and attempt.recorded:
            attempt.recorded = False
            await attempt.record.not_sent()

    def _timed_out(
        self,
        request: CreateRequest,
        deadline: float | None,
        started: float,
        last_error: KlingError | None,
    ) -> SubmitTimeoutError:
        waited = (deadline or started) - started
        return SubmitTimeoutError(request=request, timeout=max(0.0, waited), last_error=last_error)

    async def _wait_for_slot(
        self, error: KlingError, waited: float, wait_number: int, deadline: float | None
    ) -> None:
        """After a 1303: wait for a running task to finish, within ``task_slot_timeout``.

        A ``Retry-After`` on the refusal is honoured in full (not cut short by a task
        finishing); one that ends past the slot timeout fails at once. Each task the session
        sees finish wakes one waiting create, not all of them.
        """
        wire = self._wire
        plan = wire.retry_policy.slot_wait(
            error, wait_number=wait_number, waited=waited, rng=wire.rng
        )
        if plan is None:
            raise error
        delay, slot_ends_it = plan
        wire.retries += 1
        logger.info("parallel-task limit reached (1303); waiting up to %.2f s", delay)
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - wire.clock()))
        if slot_ends_it:
            await self.gate.wait(delay)
        else:
            await wire.sleep(delay)


class _Held:
    """The slot a create holds between its tries (None before it takes one), and the family
    of the task it will be bound to."""

    __slots__ = ("family", "slot")

    def __init__(self, family: TaskFamily) -> None:
        self.slot: Slot | None = None
        self.family = family

    def take(self) -> Slot:
        """The held slot, no longer held here (bound or handed back by the caller)."""
        slot = self.slot
        assert slot is not None
        self.slot = None
        return slot


# Refusals of this very request (``docs/errors.md``, "Which Kling code raises which class"):
# sending it again cannot help, so a journal remembers them. Account and auth errors are not
# among them: a re-run may succeed.
REFUSALS = (InvalidRequestError, NotFoundError, ContentPolicyError)
