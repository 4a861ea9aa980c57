"""A create's life: attempts, waits for a parallel-task slot, and reconciliation.

Every create is a paid job, so this module keeps api.md's "Create retries" and "Stamping":
a create is repeated only where the server certainly made no task; an unknown outcome is
never resent but looked up (by the stamped external id, else in the task list) or reported
as `AmbiguousCreateError` with everything needed to resolve it by hand. Within a session,
concurrent look-ups are settled so that a listed task is claimed at most once, and only by
a create it can belong to.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

import anyio
import attrs

from . import sansio
from ._policies import Action, RetryPolicy, classify
from ._wire import DeadlinePassed, Wire
from .errors import (
    AmbiguousCreateError,
    APIError,
    ContentPolicyError,
    InvalidRequestError,
    KlingError,
    ListUnavailableError,
    NotFoundError,
    SessionClosedError,
    SubmitTimeoutError,
)
from .models import ExtendRequest, Task

__all__ = ["CallbackSlot", "CreateAttempt", "CreateRecord", "Creator"]

logger = logging.getLogger("kling_async")

_RECONCILE_PAGE_SIZE = 50
# Listed tasks for the same video made this long before a lost create was sent are shown as
# candidates when it cannot be resolved; only one made after the send is ever taken for it.
_NEARBY = dt.timedelta(seconds=60)
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

    async def sending(self, sent_at: dt.datetime) -> None:
        """Immediately before the bytes leave."""

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
        "in_doubt",
        "on_wire",
        "record",
        "recorded",
        "resolved",
        "sent_at",
        "video_id",
    )

    def __init__(self, video_id: str, record: CreateRecord | None = None) -> None:
        self.video_id = video_id
        self.record = record
        self.recorded = False  # the record says "sending" for the current try
        self.sent_at = _NEVER
        self.on_wire = False  # sent, no reply yet
        self.in_doubt = False  # failed in a way that may hide a task
        self.resolved = False  # its task is known (or it certainly made none)
        self._off_wire: anyio.Event | None = None

    def begin(self) -> None:
        """A new try: nothing sent yet."""
        self.on_wire = self.in_doubt = False

    async def before_send(self) -> None:
        """Make the send durable first (journal: INTENT -> SENDING), then it leaves."""
        if self.record is not None:
            await self.record.sending(dt.datetime.now(dt.timezone.utc))
            self.recorded = True

    def put_on_wire(self) -> None:
        """The request leaves now."""
        self.sent_at = dt.datetime.now(dt.timezone.utc)
        self.on_wire = True

    def take_off_wire(self) -> None:
        """The reply came (or the request failed): another look-up waiting on it may go on."""
        self.on_wire = False
        if self._off_wire is not None:
            self._off_wire.set()
            self._off_wire = None

    async def wait_off_wire(self) -> None:
        if self.on_wire:
            if self._off_wire is None:
                self._off_wire = anyio.Event()
            await self._off_wire.wait()

    @property
    def doubtful(self) -> bool:
        """Whether a task may exist that the caller has not been told of."""
        return self.on_wire or self.in_doubt

    def may_own(self, task: Task, window: dt.timedelta) -> bool:
        """Whether ``task`` could be the one this create made (same video, made after the
        send and soon enough after it)."""
        if self.resolved or self.sent_at is _NEVER or not (self.on_wire or self.in_doubt):
            return False
        if task.parent_video is None or task.parent_video.id != self.video_id:
            return False
        if task.created_at is None:
            return True
        return _ms(self.sent_at) <= task.created_at <= self.sent_at + window


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
        self._known: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._active: set[CreateAttempt] = set()
        self._doubts: collections.deque[CreateAttempt] = collections.deque(
            maxlen=_REMEMBERED_DOUBTS
        )

    def remember(self, task_id: str) -> None:
        """A task this session made or claimed: never another create's candidate."""
        known = self._known
        known[task_id] = None
        if len(known) > _REMEMBERED_IDS:
            known.popitem(last=False)

    async def create(
        self,
        request: ExtendRequest,
        *,
        deadline: float | None = None,
        record: CreateRecord | None = None,
        callback: CallbackSlot | None = None,
    ) -> Task:
        """A create with the create retry rules (api.md "Create retries" and "Stamping").

        ``deadline`` (on the loop's clock) stops waiting before a send, never a create on
        the wire: past it, a create that has not been sent raises `SubmitTimeoutError`.
        Whatever interrupts a create while its outcome is unknown (a native asyncio cancel
        during the send, a cancel during the look-up) is logged with what finds the task
        again; closing the session under it raises AmbiguousCreateError. ``record`` (a
        journal's, for one key) hears of each step so that a crash loses nothing.
        ``callback`` is the receiver's URL for this create, added to what is sent only.
        """
        if callback is not None and request.callback_url is None:
            request = attrs.evolve(request, callback_url=callback.url)
            callback.sent = True
        attempt = CreateAttempt(request.video_id, record)
        self._active.add(attempt)
        try:
            task = await self._attempts(request, attempt, deadline)
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
        self, request: ExtendRequest, attempt: CreateAttempt, deadline: float | None
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
            authorization = wire.auth.authorization(time.time())
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
                    found = await self._reconcile(request, error, attempt)
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
                self.remember(task.task_id)
                attempt.take_off_wire()
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
        callback: CallbackSlot | None = None,
    ) -> Task:
        """Settle a create a journal left sent and unanswered (the process died mid-create).

        Once a create sent then could no longer be waiting for its reply (``create_deadline``
        after ``sent_at``), it is looked up by its external id and in the task list. Found:
        its task. Provably absent (the id unknown and the list, read fine, shows no task for
        the video since the send): nothing left the machine, so it is sent now, with the same
        external id. Anything else raises AmbiguousCreateError; it is never resent blindly.
        """
        wire = self._wire
        settled_at = sent_at + dt.timedelta(seconds=wire.create_deadline)
        wait = (settled_at - dt.datetime.now(dt.timezone.utc)).total_seconds()
        if wait > 0 and wire.retry_policy.wait:
            await wire.sleep(wait)
        attempt = CreateAttempt(request.video_id, record)
        attempt.sent_at = sent_at
        attempt.in_doubt = True
        self._active.add(attempt)
        try:
            cause = AmbiguousCreateError(
                "a journaled create was sent and never answered",
                request=request,
                sent_at=sent_at,
                external_task_id=request.external_task_id,
            )
            task = await self._reconcile(request, cause, attempt, absent_is_unsent=True)
        except _Absent:
            self._active.discard(attempt)
            logger.info("journaled create for video %s never arrived; sending it", request.video_id)
            attempt.recorded = True  # the journal says "sending"
            await self._not_sent(attempt)
            return await self.create(request, record=record, callback=callback)
        except AmbiguousCreateError:
            self._doubts.append(attempt)
            self._active.discard(attempt)
            raise
        attempt.resolved = True
        self._active.discard(attempt)
        await record.created(task)
        return task

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
        remaining = policy.task_slot_timeout - waited
        if remaining <= 0:
            raise error
        delay = policy.slot_delay(wait_number, wire.rng, error)  # Retry-After, capped
        asked = error.retry_after if isinstance(error, APIError) else None
        if asked is not None and policy.wait and asked > remaining:
            raise error
        wire.retries += 1
        logger.info("parallel-task limit reached (1303); waiting up to %.2f s", delay)
        delay = min(delay, remaining)
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - wire.clock()))
        if asked is None:
            await self.gate.wait(wire, delay)
        else:
            await wire.sleep(delay)

    async def _reconcile(
        self,
        request: ExtendRequest,
        error: KlingError,
        attempt: CreateAttempt,
        *,
        absent_is_unsent: bool = False,
    ) -> Task:
        """Find out whether a create with an unknown outcome made a task.

        Looks the task up by its external id, else in the first page of the task list, and
        returns it; raises AmbiguousCreateError with what is needed to resolve it by hand
        when it cannot be found out.
        """
        wire = self._wire
        sent_at = attempt.sent_at
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
                found = await wire.call(
                    sansio.query_request(wire.base_url, external_id),
                    lambda response, now: sansio.parse_task(response, now, task_id=external_id),
                )
            except NotFoundError:
                pass  # not yet made, or never; or the server drops external ids: the list
            except KlingError as lookup_error:
                raise ambiguous(f"looking up its external id failed ({lookup_error})") from error
            else:
                self.keeps_external_ids = True
                self.remember(found.task_id)
                return found
        window = _NEARBY + dt.timedelta(seconds=wire.create_deadline)
        for look in range(2):
            try:
                tasks = await wire.call(
                    sansio.list_request(wire.base_url, 1, _RECONCILE_PAGE_SIZE),
                    sansio.parse_task_list,
                )
            except ListUnavailableError:
                raise ambiguous("this base URL offers no task list to look it up") from error
            except KlingError as list_error:
                raise ambiguous(f"listing tasks failed ({list_error})") from error
            if external_id is not None:
                for task in tasks:
                    if task.external_task_id == external_id:
                        self.remember(task.task_id)
                        return task
            # Recent tasks for this video that are not known to be someone else's.
            candidates = [
                task
                for task in tasks
                if task.task_id not in self._known
                and task.parent_video is not None
                and task.parent_video.id == request.video_id
                and (task.external_task_id is None or task.external_task_id == external_id)
                and (task.created_at is None or task.created_at >= sent_at - _NEARBY)
            ]
            rivals = [
                other
                for other in self._rivals(attempt)
                if any(other.may_own(task, window) for task in candidates)
            ]
            on_wire = [other for other in rivals if other.on_wire]
            if on_wire and look == 0:
                # Another create of this session that may own a candidate is still waiting
                # for its reply: once it has it, its task is known and no longer a candidate.
                with anyio.move_on_after(wire.create_deadline):
                    for other in on_wire:
                        await other.wait_off_wire()
                continue
            break
        # Without an id to match, a task is taken for ours only when it is the one candidate,
        # was made after the send, and no other doubtful create of this session could have
        # made it. Where the server keeps external ids, ours would carry one: no guess then.
        if (
            len(candidates) == 1
            and not rivals
            and not (external_id is not None and self.keeps_external_ids)
        ):
            (candidate,) = candidates
            if candidate.created_at is not None and candidate.created_at >= _ms(sent_at):
                self.remember(candidate.task_id)
                return candidate
        if not candidates:
            if absent_is_unsent and not rivals:
                raise _Absent
            why = "the task list shows no recent task for this video"
        elif rivals:
            why = (
                f"the task list shows {len(candidates)} recent task(s) for this video, which "
                f"another create of this session with an unknown outcome may have made as well"
            )
        else:
            why = (
                f"the task list shows {len(candidates)} recent task(s) for this video, none "
                "of which can be told apart as the one it made"
            )
        raise ambiguous(why, candidates) from error

    def _rivals(self, attempt: CreateAttempt) -> Iterable[CreateAttempt]:
        """Other creates of this session whose outcome is (or was left) unknown."""
        for other in (*self._active, *self._doubts):
            if other is not attempt and other.video_id == attempt.video_id:
                yield other


class _Absent(Exception):
    """The look-up proved a create absent: neither its external id nor the list knows it."""


# Refusals of this very request (api.md "Errors"): sending it again cannot help, so a
# journal remembers them. Account and auth errors are not among them: a re-run may succeed.
_REFUSALS = (InvalidRequestError, NotFoundError, ContentPolicyError)


def _ms(when: dt.datetime) -> dt.datetime:
    """``when`` cut to whole milliseconds, as the wire's timestamps are."""
    return when.replace(microsecond=when.microsecond // 1000 * 1000)
